"""slimface.deploy"""
