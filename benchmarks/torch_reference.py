"""The PyTorch reference: transformers' `CLIPModel` with hand-rolled LoRA on q/v, clients trained
one after another with `torch.optim.Adam`, as typical research code does.

Same architecture, LoRA rank/alpha, loss (symmetric InfoNCE with the learned-scale logits), local
steps and batch size as the JAX engine in `bench_throughput.py`; random weights and data.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import common


class LoRALinear(nn.Module):
  """`base(x) + scale * (x A) B` around a frozen `nn.Linear`."""

  def __init__(self, base: nn.Linear, rank: int, alpha: float):
    super().__init__()
    self.base = base
    self.scale = alpha / rank
    self.a = nn.Parameter(torch.randn(base.in_features, rank) * 0.02)
    self.b = nn.Parameter(torch.full((rank, base.out_features), 0.01))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.base(x) + self.scale * ((x @ self.a) @ self.b)


def build_model(rank: int = common.LORA_RANK, alpha: float = common.LORA_ALPHA
                ) -> tuple[nn.Module, list[nn.Parameter]]:
  """The tiny default CLIP (random weights), backbone frozen, LoRA on every q/v projection."""
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = transformers.CLIPModel(common.tiny_default_config().to_hf())
  for p in model.parameters():
    p.requires_grad_(False)
  for layer in list(model.vision_model.encoder.layers) + list(model.text_model.encoder.layers):
    attn = layer.self_attn
    attn.q_proj = LoRALinear(attn.q_proj, rank, alpha)
    attn.v_proj = LoRALinear(attn.v_proj, rank, alpha)
  lora = [p for n, p in model.named_parameters() if n.endswith((".a", ".b"))]
  return model, lora


def clip_loss(model: nn.Module, pixels, input_ids, attention_mask) -> torch.Tensor:
  img = model.get_image_features(pixel_values=pixels)
  txt = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
  img = img / img.norm(dim=-1, keepdim=True)
  txt = txt / txt.norm(dim=-1, keepdim=True)
  logits = model.logit_scale.exp() * img @ txt.t()
  labels = torch.arange(len(img))
  return 0.5 * (nn.functional.cross_entropy(logits, labels) +
                nn.functional.cross_entropy(logits.t(), labels))


class TorchReference:
  """Runs a round: for each client, reset LoRA to the global copy, S Adam steps, keep the delta."""

  def __init__(self, num_pairs: int, seed: int = 0, threads: int = 2):
    torch.set_num_threads(threads)
    self.model, self.lora = build_model()
    self.model.train()
    # The same random pool as `common.random_device_data`, normalised like the JAX side.
    data = common.random_device_data(num_pairs, seed)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    images = torch.from_numpy(np.asarray(data.images)).permute(0, 3, 1, 2).float() / 255.0
    self.pixels = (images - mean) / std
    self.input_ids = torch.from_numpy(np.asarray(data.input_ids)).long()
    self.attention_mask = torch.from_numpy(np.asarray(data.attention_mask)).long()
    self.global_lora = [p.detach().clone() for p in self.lora]

  def set_threads(self, threads: int) -> None:
    torch.set_num_threads(threads)

  def round(self, indices: np.ndarray) -> list[list[torch.Tensor]]:
    """indices: [clients, steps, batch] (every example real). Returns per-client deltas."""
    deltas = []
    for client in indices:
      with torch.no_grad():
        for p, g in zip(self.lora, self.global_lora):
          p.copy_(g)
      opt = torch.optim.Adam(self.lora, lr=common.CLIENT_LR)
      for step_idx in client:
        idx = torch.from_numpy(np.asarray(step_idx)).long()
        loss = clip_loss(self.model, self.pixels[idx], self.input_ids[idx],
                         self.attention_mask[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
      deltas.append([(p.detach() - g) for p, g in zip(self.lora, self.global_lora)])
    return deltas

