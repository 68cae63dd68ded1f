"""A minimal OpenAI-compatible fine-tuning API, run as a real process on loopback by the tests.

    python openai_ft_server.py PORT RECORD_DIR

Implements ``POST /v1/files``, ``GET /v1/files/{id}``, ``POST /v1/fine_tuning/jobs``,
``GET /v1/fine_tuning/jobs/{id}`` and ``GET /v1/fine_tuning/jobs/{id}/events``. Every request is
recorded in RECORD_DIR (``requests.jsonl``, uploaded files as ``<file id>.jsonl``). A job succeeds
with the model ``ft:<model>:autoprompt-test::<job id>``, or fails when the model's name contains "fail".
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECORD = Path(sys.argv[2])
FILES: dict[str, dict] = {}
JOBS: dict[str, dict] = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: object = None) -> None:
        with LOCK, open(RECORD / "requests.jsonl", "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "authorization": self.headers.get("Authorization"), "body": body}) + "\n")

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/files":
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
            parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
            file_id = f"file-{len(FILES) + 1}"
            (RECORD / f"{file_id}.jsonl").write_bytes(parts["file"].get_payload(decode=True))
            purpose = parts["purpose"].get_content().strip()
            FILES[file_id] = {"id": file_id, "object": "file", "bytes": len(raw), "created_at": int(time.time()),
                              "filename": parts["file"].get_filename(), "purpose": purpose, "status": "processed"}
            self._record({"purpose": purpose, "file_id": file_id})
            return self._send(200, FILES[file_id])
        if self.path == "/v1/fine_tuning/jobs":
            body = json.loads(raw)
            self._record(body)
            job_id = f"ftjob-{len(JOBS) + 1}"
            failed = "fail" in body["model"]
            JOBS[job_id] = {
                "id": job_id, "object": "fine_tuning.job", "model": body["model"], "created_at": int(time.time()),
                "training_file": body["training_file"], "hyperparameters": body.get("hyperparameters") or {},
                "status": "failed" if failed else "succeeded", "organization_id": "org-test", "result_files": [],
                "seed": 0, "fine_tuned_model": None if failed else f"ft:{body['model']}:autoprompt-test::{job_id}",
                "error": {"code": "invalid_training_file", "message": "training file rejected", "param": None}
                if failed else None, "finished_at": int(time.time()), "trained_tokens": 1234,
                "validation_file": None, "estimated_finish": None,
            }
            return self._send(200, {**JOBS[job_id], "status": "queued", "fine_tuned_model": None})
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["v1", "files"] and len(parts) == 3 and parts[2] in FILES:
            return self._send(200, FILES[parts[2]])
        if parts[:3] == ["v1", "fine_tuning", "jobs"] and len(parts) >= 4 and parts[3] in JOBS:
            job = JOBS[parts[3]]
            if len(parts) == 5 and parts[4] == "events":
                return self._send(200, {"object": "list", "has_more": False, "data": [{
                    "id": f"ev-{job['id']}", "object": "fine_tuning.job.event", "created_at": job["created_at"],
                    "level": "info", "message": f"job {job['status']}"}]})
            return self._send(200, job)
        self._send(404, {"error": {"message": f"no route {self.path}"}})


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
