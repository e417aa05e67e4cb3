"""The DimeRec model: GEM, DAM, diffusion and losses. No torch.distributed in this package."""

from dimerec_dist.model.dimerec import DimeRec, DimeRecLosses, NoiseDraw

__all__ = ["DimeRec", "DimeRecLosses", "NoiseDraw"]
