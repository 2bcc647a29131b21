"""slimface.nn"""
