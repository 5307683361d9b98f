"""PyTorch peer worker for the throughput benchmark: BertForSequenceClassification, one logit, BCE.

This script runs inside the peer virtual environment made by ``benchmarks.peer_env`` (torch +
transformers, no TensorFlow). It imports only torch, transformers and the standard library and
nothing from this repository, so it can be run by that environment's python on its own:

    python torch_peer.py --num_layers L --hidden H --heads A --intermediate I --vocab V \\
        --seq S --batch B --threads T [--seed 0] [--impl torch]

Model: ``BertForSequenceClassification(BertConfig(...))`` with the given sizes,
``max_position_embeddings=max(512, S)``, ``num_labels=1`` and dropout 0.1, in train mode.
Loss: ``BCEWithLogitsLoss`` on the single logit (the model's own ``labels`` path would use MSE
for one label, so labels are not passed to it). Optimizer: ``AdamW(lr=1e-4,
weight_decay=0.01)``. Inputs: a few batches of random token ids ``[B, S]``, ``token_type_ids``
0 for the first half of the sequence and 1 for the second, an all-ones attention mask and
random 0/1 labels, all generated before any timing and cycled.

Protocol (one JSON object per line on stdout, flushed after each):

* after building and 3 warm-up training steps:
  ``{"ready": true, "torch": ..., "transformers": ..., "threads": T, "params": n, ...}``;
* then for each stdin line ``window K``: K full training steps (zero_grad, forward, loss,
  backward, optimizer.step), only the steps timed with ``time.perf_counter``, answered with
  ``{"steps": K, "seconds": s, "examples_per_s": K * B / s, "loss": last_loss}``;
* ``quit`` or end of input: exit 0;
* any error: ``{"error": "..."}`` and exit 1.

While it waits for the next line the worker blocks on stdin and uses no CPU, so the
orchestrator can interleave its own measurements with this worker's windows.

Anything a library prints goes to stderr: file descriptor 1 is pointed at stderr at start, and
the protocol is written to a duplicate of the original stdout.
"""

import os
import sys
import time

# This script runs with `python -I` in another virtual environment: the protocol module
# beside it is imported by path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_protocol  # noqa: E402

NUM_BATCHES = 4  # distinct pre-generated batches, cycled
WARMUP_STEPS = 3
IMPLS = ("torch",)  # eager PyTorch (transformers' default attention, SDPA)


def parse_args(argv):
    p = peer_protocol.Parser(prog="torch_peer.py", description=__doc__.split("\n")[0])
    for name in ("num_layers", "hidden", "heads", "intermediate", "vocab", "seq", "batch",
                 "threads"):
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--impl", choices=IMPLS, default="torch")
    args = p.parse_args(argv)
    for name in ("num_layers", "hidden", "heads", "intermediate", "vocab", "seq", "batch",
                 "threads"):
        if getattr(args, name) < 1:
            raise peer_protocol.ArgumentError(
                f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.hidden % args.heads:
        raise peer_protocol.ArgumentError(f"--hidden ({args.hidden}) must be divisible by --heads "
                             f"({args.heads})")
    return args


class _Peer:
    def __init__(self, args):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import torch
        import transformers
        from transformers import BertConfig, BertForSequenceClassification

        self.torch = torch
        self.args = args
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        config = BertConfig(
            vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.num_layers,
            num_attention_heads=args.heads, intermediate_size=args.intermediate,
            max_position_embeddings=max(512, args.seq), num_labels=1,
            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        self.model = BertForSequenceClassification(config)
        self.model.train()
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)

        gen = torch.Generator().manual_seed(args.seed)
        B, S = args.batch, args.seq
        token_type_ids = torch.zeros((B, S), dtype=torch.long)
        token_type_ids[:, S // 2:] = 1
        attention_mask = torch.ones((B, S), dtype=torch.long)
        self.batches = []
        for _ in range(NUM_BATCHES):
            input_ids = torch.randint(0, args.vocab, (B, S), generator=gen, dtype=torch.long)
            labels = torch.randint(0, 2, (B,), generator=gen).float()
            self.batches.append(({"input_ids": input_ids, "token_type_ids": token_type_ids,
                                  "attention_mask": attention_mask}, labels))
        self.next_batch = 0
        self.loss = float("nan")

        for _ in range(WARMUP_STEPS):
            self._step()
        self.loss = self._last_loss.item()
        self.info = {
            "ready": True, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "params": sum(
                p.numel() for p in self.model.parameters()),
            "impl": args.impl,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "batch": B, "seq": S, "warmup_loss": self.loss,
        }

    def _step(self):
        features, labels = self.batches[self.next_batch]
        self.next_batch = (self.next_batch + 1) % len(self.batches)
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(**features).logits.squeeze(-1)
        loss = self.loss_fn(logits, labels)
        loss.backward()
        self.optimizer.step()
        self._last_loss = loss

    def window(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        seconds = time.perf_counter() - start
        self.loss = self._last_loss.item()
        return {"steps": steps, "seconds": seconds,
                "examples_per_s": steps * self.args.batch / seconds, "loss": self.loss}


def main(argv=None):
    return peer_protocol.serve(lambda a: _Peer(parse_args(a)),
                               sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
