"""fasttrain: fast, honest image-classification training on Tiny-ImageNet and ImageFolder trees."""

__version__ = "0.1.0"
