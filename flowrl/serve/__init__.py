"""Local web servers (FastAPI + uvicorn, imported inside the functions that start them)."""
