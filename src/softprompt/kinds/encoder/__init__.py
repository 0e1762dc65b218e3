"""kinds/encoder"""
