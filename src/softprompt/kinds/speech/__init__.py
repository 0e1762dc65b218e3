"""kinds/speech: Whisper, prompts on the decoder input."""
