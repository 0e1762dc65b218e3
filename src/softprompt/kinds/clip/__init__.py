"""kinds/clip"""
