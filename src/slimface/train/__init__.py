"""slimface.train"""
