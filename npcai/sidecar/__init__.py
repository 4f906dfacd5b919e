"""The sidecar process: socket, requests, scheduling, NPC state and jobs."""
