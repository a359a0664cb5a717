"""Run the scrumbot chat page: `python app.py` (or `scrumbot serve`, or `make run`).

Indexes corpus/ first if the index is empty, loads the models, then serves
http://127.0.0.1:7860 (SCRUMBOT_HOST / SCRUMBOT_PORT to change)."""

from scrumbot.ui import serve

if __name__ == "__main__":
    serve()
