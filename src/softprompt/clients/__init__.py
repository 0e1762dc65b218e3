"""Clients for serving engines that run soft prompts elsewhere (vLLM's own server)."""
