"""Sparse autoencoders on the logits and hidden activations of small MNIST classifiers.

Pure library: functions take arrays, values and paths as arguments; nothing here reads
params.yaml, environment variables or fixed paths (stages/ does).

Shape suffixes (Shazeer, "Shape Suffixes - Good Coding Style", 2024): every tensor whose shape is
known ends in one uppercase letter per axis, in order.

    N  examples in a split            B  batch
    I  input pixels (784)             H  FFN hidden width
    O  outputs (10 classes)           D  SAE input width (O at the logit site, H at the hidden site)
    F  SAE latents                    K  top-k
    G  stacked grid points (calibration trains G SAEs at once)
    P  image side (28)                C  classes (10) where they index something other than logits
"""
