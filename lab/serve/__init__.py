"""`lab serve`: any ``lab.llm`` provider behind OpenAI- and Anthropic-compatible HTTP endpoints.

- ``app.create_app(llm, ...)``: the FastAPI app (routes, error shapes, one generation at a time)
- ``background.serving(llm, ...)``: serve on a free loopback port in a thread (tests, exercises)
- ``openai_protocol`` / ``anthropic_protocol``: each wire format as pydantic models + mapping
- ``limits``: what a request may hold (body size as it arrives, valid text, compilable JSON schemas)

FastAPI and uvicorn are imported only by these modules, so ``import lab.serve`` stays light.
"""
