"""Remote roles: an OpenAI-compatible inference engine (vLLM, SGLang, llama.cpp's server) serves a role.

npcai keeps what only it does (deadlines with fallbacks, priorities, NPC state, one protocol); the
engine does the model work. ``spec`` parses ``--model ROLE=URL``, ``http`` is the pooled HTTP client,
``engines`` holds one small module per engine's request shape, ``detect`` tells the engines apart,
``template`` renders prompts where choices need them, ``fair`` shares the engine between game clients,
and ``role`` drives the requests of one remote role.
"""
