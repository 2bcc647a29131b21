"""slimface.compress"""
