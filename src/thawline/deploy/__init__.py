"""Using a trained run: load it, evaluate it on a split or folders, predict images, export to ONNX."""
