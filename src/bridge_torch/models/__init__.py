"""Networks: ResNetV1 bridge encoders, MLPs, the diffusion score network and the saliency mask."""
