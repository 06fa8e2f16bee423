"""Complete models. Importing this package registers every built-in model in the registry."""

from longiseg.networks.nets import longi_unet, monai_nets, segformer, segmast  # noqa: F401
