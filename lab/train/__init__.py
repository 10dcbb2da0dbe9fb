"""Runs of the product's training job: the GPU reproduction of the shipped toy adapter."""
