"""One module per TAXII resource; each route: guards, then one store call."""
