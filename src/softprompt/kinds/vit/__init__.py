"""kinds/vit"""
