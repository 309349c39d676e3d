"""Recipes: one absl app per vision task, each ending in an int8 .tflite and a report."""
