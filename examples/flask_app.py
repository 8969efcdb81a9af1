# examples/flask_app.py: run with gunicorn --preload --threads 25 examples.flask_app:app
import os

from flask import Flask, request

from service import EmailTask, EnqueueError, SyncProducer

app = Flask(__name__)
producer = SyncProducer.from_url(os.environ["REDIS_URL"])  # one per process; threads share it


@app.post("/signup")
def signup() -> dict[str, str]:
    welcome = EmailTask(to=request.form["email"], subject="Welcome", text="Hello!")
    return {"task_id": producer.enqueue(welcome)}


@app.errorhandler(EnqueueError)
def queue_trouble(exc: EnqueueError) -> tuple[dict[str, str], int]:
    return {"error": str(exc)}, 503
