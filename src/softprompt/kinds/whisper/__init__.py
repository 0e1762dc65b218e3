"""kinds/whisper"""
