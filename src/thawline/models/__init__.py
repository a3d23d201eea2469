"""Models: stage maps and freezing, pretrained weights, the closed-form head fit, head2toe's multi-depth head,
depthwise convolutions."""
