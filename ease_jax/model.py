"""CLIP in Flax with LoRA adapters kept in a separate variable collection.

The parameter tree mirrors Hugging Face's `FlaxCLIPModel` names (`vision_model/encoder/layers/0/
self_attn/q_proj/kernel`, ...), so a Hugging Face CLIP checkpoint loads without renaming (see
`ease_jax.hf`). The frozen backbone lives in the `params` collection; LoRA factors live in the
`lora` collection with the same paths (`.../q_proj/{a,b}`), so

    model.apply({"params": backbone, "lora": lora}, ...)

differentiates w.r.t. `lora` only and vmaps over a client axis of `lora` with the backbone shared
(`in_axes=None`). In `unmerged` mode a LoRA layer computes `x W + s (x A) B`, so the frozen matmul
`x W` is one large matmul over all vmapped clients; `merged` computes `x (W + s A B)`.

Images are NHWC float32, already normalised with the CLIP mean/std (HF's Flax model takes NCHW).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Mapping[str, Any]

LORA_COLLECTION = "lora"
LORA_MODES = ("unmerged", "merged")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_layers: int = 12
  num_heads: int = 8
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  eos_token_id: int = 49407
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Architecture of a CLIP model (a hashable mirror of `transformers.CLIPConfig`)."""
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  projection_dim: int = 512
  logit_scale_init: float = 2.6592  # log(1 / 0.07), as in CLIP

  @classmethod
  def from_hf(cls, hf_config: Any) -> "CLIPConfig":
    """Builds from a `transformers.CLIPConfig`."""
    v, t = hf_config.vision_config, hf_config.text_config
    return cls(
        vision=VisionConfig(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
            num_layers=v.num_hidden_layers, num_heads=v.num_attention_heads,
            image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels,
            layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act),
        text=TextConfig(
            hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
            vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings,
            eos_token_id=t.eos_token_id, layer_norm_eps=t.layer_norm_eps, hidden_act=t.hidden_act),
        projection_dim=hf_config.projection_dim,
        logit_scale_init=float(hf_config.logit_scale_init_value),
    )

  def to_hf(self) -> Any:
    """Returns the equivalent `transformers.CLIPConfig`."""
    import transformers  # pylint: disable=g-import-not-at-top
    v, t = self.vision, self.text
    return transformers.CLIPConfig(
        vision_config=dict(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
            image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels,
            layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act),
        text_config=dict(
            hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
            vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings,
            eos_token_id=t.eos_token_id, bos_token_id=max(t.eos_token_id - 1, 0),
            pad_token_id=t.eos_token_id, layer_norm_eps=t.layer_norm_eps,
            hidden_act=t.hidden_act),
        projection_dim=self.projection_dim,
        logit_scale_init_value=self.logit_scale_init,
    )


def activation(name: str):
  """The function of a transformers `hidden_act` name."""
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"Unknown hidden_act {name!r}; expected quick_gelu, gelu, gelu_new or relu.")


def _lora_factors(module: nn.Module, dtype: Any) -> tuple[jax.Array, jax.Array] | None:
  """`(A, B)` of `module` from the `lora` collection in `dtype`, or None when it has none."""
  if not module.has_variable(LORA_COLLECTION, "a"):
    return None
  return (module.get_variable(LORA_COLLECTION, "a").astype(dtype),
          module.get_variable(LORA_COLLECTION, "b").astype(dtype))


class LoRADense(nn.Module):
  """`nn.Dense` whose kernel can carry a LoRA update from the `lora` collection.

  When `lora/<path>/{a: [in, r], b: [r, out]}` is present the output is
  `x W + scale (x A) B + bias` (unmerged) or `x (W + scale A B) + bias` (merged).
  """
  features: int
  use_bias: bool = True
  lora_scale: float = 1.0
  lora_mode: str = "unmerged"
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    factors = _lora_factors(self, self.dtype)
    if factors is None:
      y = x @ kernel
    elif self.lora_mode == "merged":
      y = x @ (kernel + self.lora_scale * (factors[0] @ factors[1]))
    else:
      y = x @ kernel + self.lora_scale * ((x @ factors[0]) @ factors[1])
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class Attention(nn.Module):
  hidden_size: int
  num_heads: int
  causal: bool
  lora_scale: float
  lora_mode: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """x: [B, T, D]; key_mask: [B, T] (1 = attend) or None."""
    dense = lambda name: LoRADense(self.hidden_size, lora_scale=self.lora_scale,
                                   lora_mode=self.lora_mode, dtype=self.dtype, name=name)
    batch, length, _ = x.shape
    head_dim = self.hidden_size // self.num_heads
    split = lambda t: t.reshape(batch, length, self.num_heads, head_dim)
    q = split(dense("q_proj")(x)) * head_dim**-0.5
    k = split(dense("k_proj")(x))
    v = split(dense("v_proj")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    allowed = jnp.ones((batch, 1, length, length), bool)
    if self.causal:
      allowed = allowed & jnp.tril(jnp.ones((length, length), bool))[None, None]
    if key_mask is not None:
      allowed = allowed & (key_mask[:, None, None, :] > 0)
    logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, self.hidden_size)
    return dense("out_proj")(out)


class EncoderLayer(nn.Module):
  config: VisionConfig | TextConfig
  causal: bool
  lora_scale: float
  lora_mode: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    cfg = self.config
    norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name=name)
    h = norm("layer_norm1")(x)
    x = x + Attention(cfg.hidden_size, cfg.num_heads, self.causal, self.lora_scale,
                      self.lora_mode, self.dtype, name="self_attn")(h, key_mask)
    h = norm("layer_norm2")(x)
    h = _Mlp(cfg.intermediate_size, cfg.hidden_size, cfg.hidden_act, self.lora_scale,
             self.lora_mode, self.dtype, name="mlp")(h)
    return x + h


class _Mlp(nn.Module):
  intermediate_size: int
  hidden_size: int
  hidden_act: str
  lora_scale: float
  lora_mode: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda f, name: LoRADense(f, lora_scale=self.lora_scale, lora_mode=self.lora_mode,
                                      dtype=self.dtype, name=name)
    x = activation(self.hidden_act)(dense(self.intermediate_size, "fc1")(x))
    return dense(self.hidden_size, "fc2")(x)


class Encoder(nn.Module):
  config: VisionConfig | TextConfig
  causal: bool
  lora_scale: float
  lora_mode: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    layers = _LayerCollection(self.config, self.causal, self.lora_scale, self.lora_mode,
                              self.dtype, name="layers")
    return layers(x, key_mask)


class _LayerCollection(nn.Module):
  config: VisionConfig | TextConfig
  causal: bool
  lora_scale: float
  lora_mode: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    for i in range(self.config.num_layers):
      x = EncoderLayer(self.config, self.causal, self.lora_scale, self.lora_mode, self.dtype,
                       name=str(i))(x, key_mask)
    return x


class VisionTransformer(nn.Module):
  config: VisionConfig
  lora_scale: float
  lora_mode: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """pixels: [B, H, W, C] normalised -> pooled [B, hidden]."""
    cfg = self.config
    x = _VisionEmbeddings(cfg, self.lora_scale, self.lora_mode, self.dtype,
                         name="embeddings")(pixels)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="pre_layrnorm")(x)
    x = Encoder(cfg, False, self.lora_scale, self.lora_mode, self.dtype, name="encoder")(x, None)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                        name="post_layernorm")(x[:, 0, :])


class LoRAPatchEmbedding(nn.Module):
  """The ViT patch embedding (a `p x p` stride-`p` convolution, no bias), optionally adapted.

  The kernel keeps the checkpoint's conv layout `[p, p, C, hidden]`; a LoRA update
  `lora/<path>/{a: [p·p·C, r], b: [r, hidden]}` acts on each flattened patch (row order
  `(kh, kw, c)`, the kernel's own), so `ease_jax.lora.merge` folds it into the kernel exactly.
  Returns `[batch, patches, hidden]`.
  """
  features: int
  patch_size: int
  lora_scale: float = 1.0
  lora_mode: str = "unmerged"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    p = self.patch_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (p, p, pixels.shape[-1], self.features)).astype(self.dtype)
    x = pixels.astype(self.dtype)
    factors = _lora_factors(self, self.dtype)
    if factors is not None and self.lora_mode == "merged":
      kernel = kernel + self.lora_scale * (factors[0] @ factors[1]).reshape(kernel.shape)
    out = jax.lax.conv_general_dilated(x, kernel, (p, p), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    batch, rows, cols, _ = out.shape
    out = out.reshape(batch, rows * cols, self.features)
    if factors is not None and self.lora_mode != "merged":
      # [B, rows, p, cols, p, C] -> [B, rows·cols, p·p·C] in the kernel's (kh, kw, c) order.
      flat = x.reshape(batch, rows, p, cols, p, x.shape[-1]).transpose(0, 1, 3, 2, 4, 5)
      flat = flat.reshape(batch, rows * cols, -1)
      out = out + self.lora_scale * ((flat @ factors[0]) @ factors[1])
    return out


class _VisionEmbeddings(nn.Module):
  config: VisionConfig
  lora_scale: float = 1.0
  lora_mode: str = "unmerged"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    cfg = self.config
    if pixels.ndim != 4 or pixels.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
      raise ValueError(
          f"encode_image expects pixels [batch, {cfg.image_size}, {cfg.image_size}, "
          f"{cfg.num_channels}] (NHWC), got shape {pixels.shape}.")
    patches = LoRAPatchEmbedding(cfg.hidden_size, cfg.patch_size, self.lora_scale,
                                 self.lora_mode, self.dtype, name="patch_embedding")(pixels)
    batch = patches.shape[0]
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.hidden_size,))
    cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, cfg.hidden_size))
    x = jnp.concatenate([cls, patches], axis=1)
    pos = nn.Embed(cfg.num_patches + 1, cfg.hidden_size, name="position_embedding",
                   embedding_init=nn.initializers.normal(0.02))
    return x + pos(jnp.arange(cfg.num_patches + 1)).astype(self.dtype)


class TextTransformer(nn.Module):
  config: TextConfig
  lora_scale: float
  lora_mode: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """input_ids, attention_mask: [B, L] -> pooled [B, hidden] at the first EOS token."""
    cfg = self.config
    if input_ids.ndim != 2 or input_ids.shape[1] > cfg.max_position_embeddings:
      raise ValueError(f"encode_text expects input_ids [batch, <= {cfg.max_position_embeddings}], "
                       f"got shape {input_ids.shape}.")
    x = _TextEmbeddings(cfg, self.dtype, name="embeddings")(input_ids)
    x = Encoder(cfg, True, self.lora_scale, self.lora_mode, self.dtype, name="encoder")(
        x, attention_mask)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(x)
    if cfg.eos_token_id == 2:  # Legacy HF configs: EOS is the largest id (HF's convention).
      eos_position = jnp.argmax(input_ids, axis=-1)
    else:
      eos_position = jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)
    return x[jnp.arange(x.shape[0]), eos_position]


class _TextEmbeddings(nn.Module):
  config: TextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    cfg = self.config
    tok = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding",
                   embedding_init=nn.initializers.normal(0.02))
    pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embedding",
                   embedding_init=nn.initializers.normal(0.01))
    x = tok(input_ids.astype(jnp.int32)) + pos(jnp.arange(input_ids.shape[1]))
    return x.astype(self.dtype)


class CLIPModule(nn.Module):
  """The two towers, their projections and the logit scale (HF `FlaxCLIPModule` layout)."""
  config: CLIPConfig
  lora_scale: float = 1.0
  lora_mode: str = "unmerged"
  dtype: Any = jnp.float32

  def setup(self):
    if self.lora_mode not in LORA_MODES:
      raise ValueError(f"lora_mode must be one of {LORA_MODES}, got {self.lora_mode!r}.")
    self.vision_model = VisionTransformer(self.config.vision, self.lora_scale, self.lora_mode,
                                          self.dtype)
    self.text_model = TextTransformer(self.config.text, self.lora_scale, self.lora_mode,
                                      self.dtype)
    self.visual_projection = LoRADense(self.config.projection_dim, use_bias=False,
                                       lora_scale=self.lora_scale, lora_mode=self.lora_mode,
                                       dtype=self.dtype)
    self.text_projection = LoRADense(self.config.projection_dim, use_bias=False,
                                     lora_scale=self.lora_scale, lora_mode=self.lora_mode,
                                     dtype=self.dtype)
    self.logit_scale = self.param("logit_scale",
                                  lambda _: jnp.asarray(self.config.logit_scale_init, jnp.float32))

  def encode_image(self, pixels: jax.Array) -> jax.Array:
    return self.visual_projection(self.vision_model(pixels)).astype(jnp.float32)

  def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return self.text_projection(self.text_model(input_ids, attention_mask)).astype(jnp.float32)

  def get_logit_scale(self) -> jax.Array:
    """The log-space logit scale; a trainable copy in the `lora` collection wins."""
    if self.has_variable(LORA_COLLECTION, "logit_scale"):
      return self.get_variable(LORA_COLLECTION, "logit_scale")
    return self.logit_scale

  def __call__(self, pixels, input_ids, attention_mask):
    return (self.encode_image(pixels), self.encode_text(input_ids, attention_mask),
            self.get_logit_scale())


@dataclasses.dataclass(frozen=True)
class CLIP:
  """Pure-function façade over `CLIPModule`. Hashable, so it can be a static jit argument.

  `params` is the frozen backbone (HF Flax layout); `lora` the adapter tree from
  `ease_jax.lora.init_lora` (or `{}` for the plain backbone).
  """
  config: CLIPConfig
  lora_scale: float = 1.0
  lora_mode: str = "unmerged"
  dtype: Any = jnp.float32

  @property
  def module(self) -> CLIPModule:
    return CLIPModule(self.config, self.lora_scale, self.lora_mode, self.dtype)

  def init(self, key: jax.Array) -> Params:
    """Random backbone parameters (HF-style initialisation scales)."""
    cfg = self.config
    pixels = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, cfg.vision.num_channels))
    ids = jnp.full((1, cfg.text.max_position_embeddings), cfg.text.eos_token_id, jnp.int32)
    return self.module.init(key, pixels, ids, jnp.ones_like(ids))["params"]

  def _variables(self, params: Params, lora: Params | None) -> dict[str, Any]:
    variables = {"params": params}
    if lora:
      variables[LORA_COLLECTION] = lora
    return variables

  def encode_image(self, params: Params, lora: Params | None, pixels: jax.Array) -> jax.Array:
    """pixels [B, H, W, C] normalised float -> image embeddings [B, projection_dim]."""
    return self.module.apply(self._variables(params, lora), pixels,
                             method=CLIPModule.encode_image)

  def encode_text(self, params: Params, lora: Params | None, input_ids: jax.Array,
                  attention_mask: jax.Array) -> jax.Array:
    """input_ids, attention_mask [B, L] -> text embeddings [B, projection_dim]."""
    return self.module.apply(self._variables(params, lora), input_ids, attention_mask,
                             method=CLIPModule.encode_text)

  def logit_scale(self, params: Params, lora: Params | None) -> jax.Array:
    """Log-space logit scale (scalar)."""
    return self.module.apply(self._variables(params, lora), method=CLIPModule.get_logit_scale)

  def __call__(self, params: Params, lora: Params | None, pixels: jax.Array,
               input_ids: jax.Array, attention_mask: jax.Array):
    """Returns (image_emb [B, P], text_emb [B, P], log logit scale)."""
    return self.module.apply(self._variables(params, lora), pixels, input_ids, attention_mask)
