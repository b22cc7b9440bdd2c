"""A small CLIP in the layout of OpenAI's ``clip`` package and open_clip, written here from the
published architecture (no network, no extra package): ``nn.MultiheadAttention`` blocks
(sequence-first as OpenAI, or batch-first as recent open_clip) and a ResNet-style tower ending in
``AttentionPool2d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d, heads, attn_mask=None, batch_first=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=batch_first)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * d, d))
        self.ln_2 = nn.LayerNorm(d)
        self.attn_mask = attn_mask

    def attention(self, x):
        mask = self.attn_mask.to(x.dtype) if self.attn_mask is not None else None
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, d, layers, heads, attn_mask=None, batch_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(d, heads, attn_mask, batch_first) for _ in range(layers)])

    def forward(self, x):  # x: (N, L, D)
        x = x if self.batch_first else x.permute(1, 0, 2)
        x = self.resblocks(x)
        return x if self.batch_first else x.permute(1, 0, 2)


class VisionTransformer(nn.Module):
    def __init__(self, size=32, patch=8, d=32, layers=2, heads=4, out=16, batch_first=False):
        super().__init__()
        self.patch_size = (patch, patch)
        self.conv1 = nn.Conv2d(3, d, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(d) * d ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn((size // patch) ** 2 + 1, d) * d ** -0.5)
        self.ln_pre = nn.LayerNorm(d)
        self.transformer = Transformer(d, layers, heads, batch_first=batch_first)
        self.ln_post = nn.LayerNorm(d)
        self.proj = nn.Parameter(torch.randn(d, out) * d ** -0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class AttentionPool2d(nn.Module):
    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x):
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training,
            need_weights=False)
        return x.squeeze(0)


class TinyResNet(nn.Module):
    """A conv stem of total stride 8 then attention pooling: 32 px -> a 4 x 4 grid."""

    def __init__(self, width=32, out=16, heads=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.attnpool = AttentionPool2d(4, width, heads, out)

    def forward(self, x):
        return self.attnpool(self.stem(x))


class OpenAICLIP(nn.Module):
    def __init__(self, vision="vit", batch_first=False, vocab=50, ctx=8, d=32, layers=3, heads=4, out=16):
        super().__init__()
        torch.manual_seed(0)
        self.visual = VisionTransformer(batch_first=batch_first) if vision == "vit" else TinyResNet()
        mask = torch.full((ctx, ctx), float("-inf")).triu(1)
        self.transformer = Transformer(d, layers, heads, attn_mask=mask, batch_first=batch_first)
        self.token_embedding = nn.Embedding(vocab, d)
        self.positional_embedding = nn.Parameter(torch.randn(ctx, d) * 0.01)
        self.ln_final = nn.LayerNorm(d)
        self.text_projection = nn.Parameter(torch.randn(d, out) * d ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias") or "ln" in name:
                    p.add_(0.1 * torch.randn_like(p))

    def encode_image(self, image):
        return self.visual(image)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


def tokens():
    """(3, 8) ids; EOS = 49 is the highest id (OpenAI's convention), zero padding."""
    return torch.tensor([[48, 5, 6, 49, 0, 0, 0, 0], [48, 7, 8, 9, 10, 49, 0, 0], [48, 3, 49, 0, 0, 0, 0, 0]])


class WordTokenizer:
    """open_clip-like: texts -> (T, 8) ids, SOT 48, one id per word, EOT 49 (the highest id), zero
    padding; ``decode`` as open_clip's ``SimpleTokenizer`` is called (one id)."""

    def __call__(self, texts):
        ids = torch.zeros(len(texts), 8, dtype=torch.long)
        for i, t in enumerate(texts):
            words = [5 + len(w) for w in t.split()][:6]
            ids[i, :len(words) + 2] = torch.tensor([48] + words + [49])
        return ids

    def decode(self, ids):
        return f" w{ids[0]} "
