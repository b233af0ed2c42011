"""What extraction encodes patches with: :mod:`.checkpoint` (trainer checkpoints, exported backbones)
and :mod:`.baselines` (timm / torchvision models with local weights)."""
