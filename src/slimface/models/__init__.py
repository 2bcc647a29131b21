"""slimface.models"""
