"""Serving: the local backend (seldon-core microservices + a weighted router) and its log."""
