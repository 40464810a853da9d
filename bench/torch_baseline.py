"""The same GNMT as gnmt-model, in PyTorch: the speed baseline of `gnmt bench train --torch`.

Layout (as crates/gnmt-model): embeddings; a bidirectional bottom encoder layer over packed
(length-masked) sequences, then unidirectional layers with residual connections from layer
`residual_from_layer` up; the decoder's bottom layer runs over the whole target, additive
attention is queried by its outputs over the top encoder outputs, the context is concatenated
to the input of every upper decoder layer; output projection; label-smoothed cross-entropy over
real tokens; Adam. Dropout 0.2 on every layer input, as in training.

It times what the Rust benchmark times, on the same shapes: the batch's source and target
lengths are passed on the command line. Prints `tokens_per_s=<float>` last.

`--device cuda` runs on the GPU (nn.LSTM then runs cuDNN's fused LSTM) with PyTorch's default
TF32 settings, which it prints; `--amp tf32` turns TF32 on for every product (as gnmt's
`--matmul tf32`), `--amp bf16` adds bf16 autocast (f32 master weights), PyTorch's usual mixed
precision.

Run through bench/torch_baseline.sh, which installs PyTorch (CPU) into a virtual environment.
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, hidden, units):
        super().__init__()
        self.query = nn.Linear(hidden, units, bias=False)
        self.key = nn.Linear(hidden, units)
        self.score = nn.Linear(units, 1, bias=False)

    def forward(self, queries, values, keys, src_mask):
        # queries [B, T, H], keys [B, S, A], values [B, S, H], src_mask [B, S] bool
        q = self.query(queries)
        scores = self.score(torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)
        scores = scores.masked_fill(~src_mask.unsqueeze(1), -1e9)
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights, values)


class Gnmt(nn.Module):
    def __init__(self, cfg, dropout):
        super().__init__()
        v, e, h = cfg["vocab_size"], cfg["embedding_dim"], cfg["hidden_size"]
        self.residual_from = cfg["residual_from_layer"] if cfg["residual"] else 10**9
        self.dropout = nn.Dropout(dropout)
        self.src_emb = nn.Embedding(v, e)
        self.tgt_emb = nn.Embedding(v, e)
        self.enc_bi = nn.LSTM(e, h, batch_first=True, bidirectional=True)
        self.enc = nn.ModuleList(
            nn.LSTM(2 * h if k == 1 else h, h, batch_first=True)
            for k in range(1, cfg["encoder_layers"])
        )
        self.dec = nn.ModuleList(
            nn.LSTM(e if k == 0 else 2 * h, h, batch_first=True)
            for k in range(cfg["decoder_layers"])
        )
        self.attention = Attention(h, cfg["attention_size"])
        self.output = nn.Linear(h, v)

    def encode(self, src, src_len):
        x = self.dropout(self.src_emb(src))
        packed = nn.utils.rnn.pack_padded_sequence(
            x, src_len, batch_first=True, enforce_sorted=False
        )
        out, _ = self.enc_bi(packed)
        x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        for k, layer in enumerate(self.enc, start=2):  # layer numbers from 1
            out, _ = layer(self.dropout(x))
            x = out + x if k >= self.residual_from else out
        return x

    def forward(self, src, src_len, src_mask, tgt_in):
        values = self.encode(src, src_len)
        keys = self.attention.key(values)
        x, _ = self.dec[0](self.dropout(self.tgt_emb(tgt_in)))
        context = self.attention(x, values, keys, src_mask)
        for k, layer in enumerate(self.dec[1:], start=2):
            out, _ = layer(self.dropout(torch.cat([x, context], dim=-1)))
            x = out + x if k >= self.residual_from else out
        return self.output(self.dropout(x))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="model preset JSON")
    p.add_argument("--src-len", required=True, help="comma-separated source lengths")
    p.add_argument("--tgt-len", required=True, help="comma-separated target lengths")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--amp", choices=["none", "tf32", "bf16"], default="none", help="product precision"
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.amp == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(7)
    device = torch.device(a.device)
    cfg = json.load(open(a.config))
    src_len = torch.tensor([int(x) for x in a.src_len.split(",")])
    tgt_len = torch.tensor([int(x) for x in a.tgt_len.split(",")])
    b, s, t, v = len(src_len), int(src_len.max()), int(tgt_len.max()), cfg["vocab_size"]
    src = torch.randint(4, v, (b, s))
    tgt_in = torch.randint(4, v, (b, t))
    tgt_out = torch.randint(4, v, (b, t))
    src_mask = torch.arange(s)[None, :] < src_len[:, None]
    tgt_mask = torch.arange(t)[None, :] < tgt_len[:, None]
    tgt_out = tgt_out.masked_fill(~tgt_mask, -100)  # ignored by the loss
    # pack_padded_sequence wants the lengths on the CPU.
    src, src_mask, tgt_in, tgt_out = (x.to(device) for x in (src, src_mask, tgt_in, tgt_out))

    model = Gnmt(cfg, dropout=0.2).to(device)
    for prm in model.parameters():
        nn.init.uniform_(prm, -0.04, 0.04)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp == "bf16")

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            logits = model(src, src_len, src_mask, tgt_in)
            loss = F.cross_entropy(
                logits.reshape(-1, v).float(),
                tgt_out.reshape(-1),
                ignore_index=-100,
                label_smoothing=0.1,
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    secs = time.perf_counter() - start
    tokens = int(tgt_len.sum()) * a.steps
    rate = tokens / secs
    if device.type == "cuda":
        where = (
            f"{torch.cuda.get_device_name(device)}, amp {a.amp}, "
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"TF32 cuDNN {torch.backends.cudnn.allow_tf32}"
        )
    else:
        where = f"{torch.get_num_threads()} threads, amp {a.amp}"
    print(
        f"torch {torch.__version__}, {where}: "
        f"{rate:.0f} target tokens/s, {1000 * secs / a.steps:.1f} ms/step"
    )
    print(f"tokens_per_s={rate}")


if __name__ == "__main__":
    main()
