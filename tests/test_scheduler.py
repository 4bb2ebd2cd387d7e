"""`meldpunt run`: spool pick-up, MISP pulls and MISP sync on intervals (issue #15, item 2).

Files dropped in spool/PARTNER/FORMAT/ are ingested once finished (a `.part` name, or changed
less than settle_seconds ago, is left alone) and moved to done/ or failed/ (with the reason);
a store that cannot take them leaves them in place. A partner's MISP instance (the strict MISP
test server) is pulled from where the last successful pull began. The outbox is pushed. Each
job's last success is in the store (`run --status`, metrics). The worker stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymisp import PyMISP

from connector.adapters.mapping import load_mappings
from connector.config import Config, ConfigError, load_config, parse_config
from connector.scheduler.worker import Worker
from connector.store import Store
from tests.conftest import DIVD_SCAN, SHARED_DATA
from tests.misp_fake import MispFake
from tests.test_cli import CASE_YAML, CLI, cli_env, explain, run_cli, write_config

MISP_SAMPLE = SHARED_DATA / "misp" / "connect2trust-event.json"
OLD = time.time() - 3600  # a modification time long past any settle_seconds


def aged(path: Path) -> Path:
    os.utime(path, (OLD, OLD))
    return path


def drop_divd(spool: Path, name: str = "DIVD-2024-00012") -> Path:
    folder = spool / "divd" / "divd-nuclei"
    folder.mkdir(parents=True, exist_ok=True)
    scan = aged(Path(shutil.copy(DIVD_SCAN, folder / f"{name}.nuclei.jsonl")))
    aged(Path(shutil.copy(CASE_YAML, folder / f"{name}.yaml")))
    return scan


def deployment(tmp_path: Path, **scheduler: Any) -> tuple[Path, Path]:
    """The example deployment with a spool (and `scheduler` settings); (config path, spool)."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    config = write_config(tmp_path)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["scheduler"] = {"spool_dir": "spool", "settle_seconds": 30, **scheduler}
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return config, spool


@pytest.fixture
def worker_of(tmp_path: Path) -> Iterator[Any]:
    opened: list[Store] = []

    def make(config_path: Path) -> tuple[Worker, Store, Config]:
        config = load_config(config_path)
        store = Store.open(config.database)
        opened.append(store)
        return Worker(config, store, load_mappings()), store, config

    yield make
    for store in opened:
        store.close()


def test_a_finished_file_is_ingested_and_moved_to_done_with_its_case_file(
    tmp_path: Path, worker_of: Any
) -> None:
    config_path, spool = deployment(tmp_path)
    drop_divd(spool)
    worker, store, _config = worker_of(config_path)
    (job,) = [j for j in worker.jobs if j.name == "spool"]
    assert worker.run_job(job)
    folder = spool / "divd" / "divd-nuclei"
    run = store.runs(1)[0]
    assert run["status"] == "done" and run["partner"] == "divd" and run["counts"]["notifications"] > 0
    assert (
        sorted(p.name for p in (folder / "done").iterdir())[-1]
        == f"run{run['id']}-DIVD-2024-00012.nuclei.jsonl"
    )
    assert any(p.name.endswith("-DIVD-2024-00012.yaml") for p in (folder / "done").iterdir())
    assert [p.name for p in folder.iterdir() if p.is_file()] == []
    state = store.job_state("spool")
    assert state is not None and state["ok"] and state["counts"]["done"] == 1 and state["last_success"]


def test_files_still_being_written_are_left_alone(tmp_path: Path, worker_of: Any) -> None:
    config_path, spool = deployment(tmp_path)
    folder = spool / "divd" / "divd-nuclei"
    folder.mkdir(parents=True)
    (folder / "DIVD-2024-00012.nuclei.jsonl.part").write_bytes(DIVD_SCAN.read_bytes())  # an upload
    aged(folder / "DIVD-2024-00012.nuclei.jsonl.part")
    fresh = Path(shutil.copy(DIVD_SCAN, folder / "DIVD-2024-00013.nuclei.jsonl"))  # being copied
    aged(Path(shutil.copy(CASE_YAML, folder / "DIVD-2024-00013.yaml")))
    worker, store, _config = worker_of(config_path)
    (job,) = [j for j in worker.jobs if j.name == "spool"]
    assert worker.run_job(job)
    assert store.runs(5) == [], "an unfinished file was ingested"
    assert fresh.exists() and (folder / "DIVD-2024-00012.nuclei.jsonl.part").exists()
    assert store.job_state("spool")["counts"]["waiting"] == 1  # type: ignore[index]
    # Renamed into place (the .part convention) and once the other has settled: both go in.
    os.replace(folder / "DIVD-2024-00012.nuclei.jsonl.part", folder / "DIVD-2024-00012.nuclei.jsonl")
    aged(Path(shutil.copy(CASE_YAML, folder / "DIVD-2024-00012.yaml")))
    aged(fresh)
    assert worker.run_job(job)
    assert len(store.runs(5)) == 2
    assert len([p for p in (folder / "done").iterdir()]) == 4


def test_an_input_that_yields_nothing_goes_to_failed_with_its_reason(tmp_path: Path, worker_of: Any) -> None:
    config_path, spool = deployment(tmp_path)
    folder = spool / "shadowserver-foundation" / "shadowserver"
    folder.mkdir(parents=True)
    broken = folder / "2024-06-01-scan_http-nl.csv"
    broken.write_text("timestamp,ip,port\nyesterday,not-an-address,x\n", encoding="utf-8")
    aged(broken)
    worker, store, _config = worker_of(config_path)
    (job,) = [j for j in worker.jobs if j.name == "spool"]
    assert worker.run_job(job)
    run = store.runs(1)[0]
    failed = folder / "failed" / f"run{run['id']}-2024-06-01-scan_http-nl.csv"
    assert failed.is_file() and not broken.exists()
    reason = failed.with_name(failed.name + ".reason.txt").read_text(encoding="utf-8")
    assert "no notification" in reason and "quarantined" in reason


def test_a_folder_that_names_nothing_keeps_its_files_and_the_job_says_so(
    tmp_path: Path, worker_of: Any
) -> None:
    config_path, spool = deployment(tmp_path)
    unknown = spool / "nobody" / "divd-nuclei"
    unknown.mkdir(parents=True)
    aged(Path(shutil.copy(DIVD_SCAN, unknown / "x.nuclei.jsonl")))
    wrong = spool / "divd" / "shadowserver"  # a format the partner may not deliver
    wrong.mkdir(parents=True)
    aged(Path(shutil.copy(DIVD_SCAN, wrong / "y.csv")))
    worker, store, _config = worker_of(config_path)
    (job,) = [j for j in worker.jobs if j.name == "spool"]
    assert not worker.run_job(job)
    assert (unknown / "x.nuclei.jsonl").exists() and (wrong / "y.csv").exists()
    state = store.job_state("spool")
    assert state is not None and not state["ok"]
    assert (
        "unknown partner 'nobody'" in state["message"]
        and "may not deliver format 'shadowserver'" in state["message"]
    )


def test_a_store_that_cannot_take_the_file_leaves_it_in_the_spool(
    tmp_path: Path, worker_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    config_path, spool = deployment(tmp_path)
    scan = drop_divd(spool)
    worker, store, _config = worker_of(config_path)

    def database_down(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(worker.ingestor, "run", database_down)
    (job,) = [j for j in worker.jobs if j.name == "spool"]
    assert not worker.run_job(job)
    assert scan.exists() and not (scan.parent / "done").exists() and not (scan.parent / "failed").exists()
    state = store.job_state("spool")
    assert state is not None and not state["ok"] and "OperationalError" in state["message"]
    monkeypatch.undo()
    assert worker.run_job(job)  # the next pass takes it
    assert not scan.exists()


def test_done_and_failed_files_older_than_keep_done_days_are_deleted(tmp_path: Path, worker_of: Any) -> None:
    config_path, spool = deployment(tmp_path, keep_done_days=7)
    done = spool / "divd" / "divd-nuclei" / "done"
    done.mkdir(parents=True)
    old, recent = done / "run1-old.jsonl", done / "run2-recent.jsonl"
    old.write_text("{}\n")
    recent.write_text("{}\n")
    os.utime(old, (time.time() - 8 * 86400,) * 2)
    os.utime(recent, (time.time() - 6 * 86400,) * 2)
    worker, _store, _config = worker_of(config_path)
    (job,) = [j for j in worker.jobs if j.name == "spool"]
    assert worker.run_job(job)
    assert not old.exists() and recent.exists()


# --- MISP: pull and sync -----------------------------------------------------------------------


@pytest.fixture
def misp() -> Iterator[MispFake]:
    fake = MispFake().start()
    yield fake
    fake.stop()


def seed(fake: MispFake) -> dict[str, Any]:
    """Connect2Trust's sample event, added to the MISP test server (published)."""
    event = json.loads(MISP_SAMPLE.read_text(encoding="utf-8"))
    event["Event"].pop("Orgc", None)
    client = PyMISP(fake.url, fake.key, ssl=False)
    added = client.add_event(event, pythonify=False)
    assert "Event" in added, added
    client.publish(added["Event"]["id"])
    return dict(added)


def misp_deployment(
    tmp_path: Path, fake: MispFake, monkeypatch: pytest.MonkeyPatch, **scheduler: Any
) -> Path:
    config, _spool = deployment(tmp_path, **scheduler)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["partners"].append(
        {
            "id": "connect2trust",
            "name": "Connect2Trust",
            "formats": ["misp-event"],
            "misp_pull": {
                "url": fake.url,
                "key_env": "C2T_MISP_KEY",
                "verify_tls": False,
                "tags": ["rsit:%"],
            },
        }
    )
    zcert = next(r for r in raw["recipients"] if r["id"] == "zcert")
    zcert["misp"] = {"url": fake.url, "key_env": "ZCERT_MISP_KEY", "verify_tls": False}
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("C2T_MISP_KEY", fake.key)
    monkeypatch.setenv("ZCERT_MISP_KEY", fake.key)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return config


def test_a_misp_pull_ingests_the_partners_events_and_continues_where_it_began(
    tmp_path: Path, worker_of: Any, misp: MispFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(misp)
    config_path = misp_deployment(tmp_path, misp, monkeypatch)
    worker, store, _config = worker_of(config_path)
    (job,) = [j for j in worker.jobs if j.name == "misp-pull:connect2trust"]
    began = time.time()
    assert worker.run_job(job)
    state = store.job_state("misp-pull:connect2trust")
    assert state is not None and state["ok"] and state["counts"]["events"] == 1
    assert began <= state["pulled_from_start"] <= time.time()
    run = store.runs(1)[0]
    assert run["partner"] == "connect2trust" and run["format"] == "misp-event" and run["status"] == "done"
    assert run["counts"]["notifications"] > 0
    done = tmp_path / "spool" / "connect2trust" / "misp-event" / "done"
    (kept,) = list(done.iterdir())
    assert kept.name.startswith(f"run{run['id']}-pulled-") and kept.suffix == ".jsonl"
    searches = [r for r in misp.requests if r.path.startswith("/events/restSearch")]
    first = searches[-1].body
    assert first["tags"] == ["rsit:%"] and first["published"] in (True, 1)
    assert abs(int(first["timestamp"]) - (began - 86400)) < 5  # first_pull: a day back
    # The next pull asks from where this one began, less the overlap (the event, changed just
    # now, comes again: re-ingesting it changes nothing).
    assert worker.run_job(job)
    second = [r for r in misp.requests if r.path.startswith("/events/restSearch")][-1].body
    assert int(second["timestamp"]) == int(state["pulled_from_start"] - 300)
    again = store.runs(1)[0]
    assert again["id"] == run["id"] + 1 and again["counts"]["new"] == 0 and again["counts"]["unchanged"] > 0


def test_a_failed_pull_is_recorded_and_does_not_move_the_start(
    tmp_path: Path, worker_of: Any, misp: MispFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = misp_deployment(tmp_path, misp, monkeypatch)
    worker, store, _config = worker_of(config_path)
    (job,) = [j for j in worker.jobs if j.name == "misp-pull:connect2trust"]
    monkeypatch.delenv("C2T_MISP_KEY")
    assert not worker.run_job(job)
    state = store.job_state("misp-pull:connect2trust")
    assert state is not None and not state["ok"] and "C2T_MISP_KEY" in state["message"]
    assert "pulled_from_start" not in state and "last_success" not in state


def test_misp_sync_job_pushes_the_outbox(
    tmp_path: Path, worker_of: Any, misp: MispFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = misp_deployment(tmp_path, misp, monkeypatch)
    worker, store, _config = worker_of(config_path)
    assert worker.ingestor.run("divd", "divd-nuclei", [DIVD_SCAN]).ok
    assert store.misp_due("zcert", include_later=True)
    (job,) = [j for j in worker.jobs if j.name == "misp-sync"]
    assert worker.run_job(job)
    assert not store.misp_due("zcert", include_later=True)
    assert misp.events
    state = store.job_state("misp-sync")
    assert state is not None and state["ok"] and state["counts"]["added"] == len(misp.events)


# --- the worker as a process -------------------------------------------------------------------


def test_meldpunt_run_does_every_job_on_its_interval_and_stops_on_sigterm(
    tmp_path: Path, misp: MispFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(misp)
    config = misp_deployment(
        tmp_path, misp, monkeypatch, spool_interval=0.5, settle_seconds=0.5, misp_sync_interval=0.5
    )
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["partners"][-1]["misp_pull"]["interval"] = 1
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    env = cli_env(config) | {k: os.environ[k] for k in ("C2T_MISP_KEY", "ZCERT_MISP_KEY", "NO_PROXY")}
    process = subprocess.Popen(
        [*CLI, "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        started = process.stdout.readline()
        assert "meldpunt run: spool every 0.5s" in started and "misp-sync every 0.5s" in started, started
        spool = tmp_path / "spool"
        drop_divd(spool)  # dropped while it runs
        done = spool / "divd" / "divd-nuclei" / "done"
        deadline = time.monotonic() + 60
        while not (done.is_dir() and len(list(done.iterdir())) == 2) or not misp.events:
            assert time.monotonic() < deadline, "the worker did not pick the file up or push it"
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        time.sleep(1.5)  # another round of every job
        status = run_cli("run", "--status", cwd=tmp_path, env=env)
        assert status.returncode == 0, explain(status)
        for job in ("spool", "misp-pull:connect2trust", "misp-sync"):
            line = next(line for line in status.stdout.splitlines() if f" {job} " in line)
            assert " yes " in line, status.stdout
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, f"{out}\n{err}"
    assert "stopped on SIGTERM" in out
    runs = run_cli("runs", "list", "--json", cwd=tmp_path, env=env)
    formats = {run["format"] for run in json.loads(runs.stdout)}
    assert {"divd-nuclei", "misp-event"} <= formats


def test_a_second_worker_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    config, _spool = deployment(tmp_path, spool_interval=60)
    env = cli_env(config)
    first = subprocess.Popen(
        [*CLI, "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and "meldpunt run:" in first.stdout.readline()
        second = run_cli("run", cwd=tmp_path, env=env)
        assert second.returncode == 1, explain(second)
        assert "another `meldpunt run` is using the spool" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_run_once_and_nothing_to_run(tmp_path: Path) -> None:
    config, spool = deployment(tmp_path)
    drop_divd(spool)
    once = run_cli("run", "--once", cwd=tmp_path, config=config)
    assert once.returncode == 0, explain(once)
    assert len(list((spool / "divd" / "divd-nuclei" / "done").iterdir())) == 2
    (tmp_path / "bare").mkdir()
    bare = write_config(tmp_path / "bare")
    nothing = run_cli("run", "--once", cwd=tmp_path, config=bare)
    assert nothing.returncode == 2 and "nothing to run" in nothing.stderr, explain(nothing)


@pytest.mark.parametrize(
    ("scheduler", "partner_pull", "fragment"),
    [
        ({"spool_dir": "no-such-dir"}, None, "scheduler.spool_dir: no such directory"),
        ({"spool_interval": "soon"}, None, "scheduler.spool_interval: not a duration: 'soon'"),
        ({"misp_sync_interval": -5}, None, "scheduler.misp_sync_interval: Input should be greater than 0"),
        ({}, {"url": "https://misp.example.org", "key_env": "K"}, "misp_pull: needs scheduler.spool_dir"),
        ({}, {"url": "misp.example.org", "key_env": "K"}, "misp_pull.url: String should match pattern"),
    ],
)
def test_scheduler_settings_are_checked(
    tmp_path: Path, scheduler: dict[str, Any], partner_pull: dict[str, Any] | None, fragment: str
) -> None:
    raw: dict[str, Any] = {"scheduler": scheduler, "partners": [{"id": "c2t", "name": "C2T"}]}
    if partner_pull is not None:
        raw["partners"][0]["misp_pull"] = partner_pull
    path = tmp_path / "meldpunt.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(fragment in problem for problem in caught.value.problems), caught.value.problems


def test_durations_read_as_seconds() -> None:
    config = parse_config(
        {"scheduler": {"spool_interval": "2m", "misp_sync_interval": "1h", "settle_seconds": 0}}
    )
    assert config.scheduler.spool_interval == 120 and config.scheduler.misp_sync_interval == 3600
    assert config.scheduler.settle_seconds == 0
