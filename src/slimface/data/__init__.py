"""slimface.data"""
