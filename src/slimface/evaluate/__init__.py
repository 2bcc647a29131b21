"""slimface.evaluate"""
