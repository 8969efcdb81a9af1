# examples/fastapi_app.py: run with uvicorn examples.fastapi_app:app
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Form

from service import EmailTask, Producer


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with Producer.from_url(os.environ["REDIS_URL"]) as producer:
        app.state.producer = producer
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/signup")
async def signup(email: str = Form()) -> dict[str, str]:
    welcome = EmailTask(to=email, subject="Welcome", text="Hello!")
    return {"task_id": await app.state.producer.enqueue(welcome)}
