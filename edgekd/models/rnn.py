"""A BiLSTM text student (Tang et al. 2019, "Distilling task-specific knowledge from BERT into simple neural
networks"): token embeddings (the teacher's, projected down where narrower) -> bidirectional LSTM -> max-pool over
real tokens -> classifier.

Padding-invariant by construction: the backward direction is a forward LSTM run on each text's real tokens in
reverse order (gathered by index), not torch's bidirectional LSTM, whose reverse pass would start on the padding of
a short text in a padded batch. So a text gets the same logits alone, in a padded batch, or padded to a device's
static sequence length, and the graph exports to ONNX as two plain LSTM nodes and a Gather.
"""
from __future__ import annotations

import torch
from torch import nn


class TextBiLSTM(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_labels: int, pad_id: int = 0,
                 projection_dim: int | None = None):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        # the teacher's embeddings are kept whole; a narrower LSTM input goes through a learned projection
        self.projection = nn.Linear(embedding_dim, projection_dim) if projection_dim else None
        width = projection_dim or embedding_dim
        self.forward_lstm = nn.LSTM(width, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(width, hidden_size, batch_first=True)
        self.classifier = nn.Linear(2 * hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        if self.projection is not None:
            x = self.projection(x)
        steps = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        lengths = attention_mask.sum(dim=1, keepdim=True)
        # position of each step in the reversed text: real tokens reversed, padding left where it is
        reverse = torch.where(steps < lengths, lengths - 1 - steps, steps)
        index = reverse[:, :, None].expand(-1, -1, x.shape[-1])
        fwd, _ = self.forward_lstm(x)
        bwd, _ = self.backward_lstm(torch.gather(x, 1, index))
        bwd = torch.gather(bwd, 1, reverse[:, :, None].expand(-1, -1, bwd.shape[-1]))  # back to text order
        h = torch.cat([fwd, bwd], dim=-1)
        mask = attention_mask[:, :, None].to(h.dtype)
        # max over real tokens only: an LSTM's outputs lie in [-1, 1], so padded positions set to -1 never exceed it,
        # and the tensor keeps that range for a quantizer (a -1e4 fill would make its 8-bit step ~40)
        h = h * mask + (mask - 1.0)
        return self.classifier(h.max(dim=1).values)


def build_rnn(spec: dict) -> nn.Module:
    c = spec["rnn_config"]
    return TextBiLSTM(c["vocab_size"], c["embedding_dim"], c["hidden_size"], c["num_labels"], c.get("pad_id", 0),
                      c.get("projection_dim"))
