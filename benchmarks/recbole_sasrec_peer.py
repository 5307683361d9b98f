"""RecBole peer worker for the SASRec throughput benchmark: RecBole 1.2.1's SASRec, CE loss,
trained step by step by RecBole's own trainer.

This script runs inside RecBole's virtual environment (``benchmarks.recbole_peer.ensure_env``:
torch + recbole, no TensorFlow). It imports only torch, numpy, recbole and the standard
library and nothing from this repository, so that environment's python runs it on its own:

    python recbole_sasrec_peer.py --num_layers L --hidden H --heads A --intermediate I \\
        --vocab N --seq S --batch B --threads T [--seed 0]

``--vocab`` is the number of items (RecBole adds its padding id 0, so its item field has
N + 1 ids); ``--seq`` is ``MAX_ITEM_LIST_LENGTH``.

Model: ``recbole.model.sequential_recommender.SASRec`` built from a RecBole ``Config``
(``n_layers`` L, ``n_heads`` A, ``hidden_size`` H, ``inner_size`` I, ``MAX_ITEM_LIST_LENGTH``
S, ``loss_type`` CE, ``train_neg_sample_args`` None; everything else RecBole's defaults:
``hidden_dropout_prob`` / ``attn_dropout_prob`` 0.5, GELU, learner Adam, learning rate
0.001, weight decay 0, no gradient clipping) over a RecBole ``Dataset`` made by
``create_dataset`` from a small synthetic benchmark dataset written to a temporary
directory (``<name>.{train,valid,test}.inter``, one training row per item, so the item
field holds exactly the N items + padding; checked). Training: RecBole's
``Trainer._train_epoch`` itself (``interaction.to(device)``, ``optimizer.zero_grad()``,
``model.calculate_loss(interaction)``, ``loss.item()``, the NaN check, ``backward()``,
``optimizer.step()`` through its disabled AMP scaler), the optimizer the trainer built,
over ``NUM_BATCHES`` pre-generated ``Interaction`` batches, cycled: random histories
``item_id_list [B, S]`` (left-aligned, zero-padded, lengths uniform in 1..S, items uniform
in 1..N), their ``item_length`` and a uniform target ``item_id``, all made before any
timing.

Protocol (one JSON object per line on stdout, as ``benchmarks/torch_peer.py``):

* after building and 3 warm-up training steps:
  ``{"ready": true, "recbole": ..., "torch": ..., "numpy": ..., "threads": T,
  "params": n, "settings": {...}, ...}``;
* then for each stdin line ``window K``: K training steps (one ``_train_epoch`` over K
  batches), only those timed with ``time.perf_counter``, answered with
  ``{"steps": K, "seconds": s, "examples_per_s": K * B / s, "loss": mean loss}``;
* ``quit`` or end of input: exit 0;
* any error: ``{"error": "..."}`` and exit 1.

While it waits for the next line the worker blocks on stdin and uses no CPU. Anything a
library prints goes to stderr (file descriptor 1 is pointed at stderr at start; the
protocol is written to a duplicate of the original stdout).
"""

import os
import sys
import tempfile
import time

# This script runs with `python -I` in another virtual environment: the protocol module
# beside it is imported by path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_protocol  # noqa: E402

NUM_BATCHES = 4  # distinct pre-generated batches, cycled
WARMUP_STEPS = 3
DATASET = "sasrec_throughput"
# Reported from RecBole's final config (what the model and trainer were built with).
REPORTED_KEYS = ("n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob",
                 "attn_dropout_prob", "hidden_act", "layer_norm_eps", "initializer_range",
                 "loss_type", "MAX_ITEM_LIST_LENGTH", "learner", "learning_rate",
                 "weight_decay", "clip_grad_norm", "train_batch_size", "enable_amp")


def parse_args(argv):
    p = peer_protocol.Parser(prog="recbole_sasrec_peer.py", description=__doc__.split("\n")[0])
    names = ("num_layers", "hidden", "heads", "intermediate", "vocab", "seq", "batch",
             "threads")
    for name in names:
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in names:
        if getattr(args, name) < 1:
            raise peer_protocol.ArgumentError(
                f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.hidden % args.heads:
        raise peer_protocol.ArgumentError(f"--hidden ({args.hidden}) must be divisible by --heads "
                             f"({args.heads})")
    return args


def write_dataset(directory, vocab):
    """RecBole benchmark files naming every item ``i1..iN``: training row r has history
    ``[i_r]`` and target ``i_{r+1}`` (wrapping), so each item is a token of the item
    field; one validation and one test row."""
    folder = os.path.join(directory, DATASET)
    os.makedirs(folder, exist_ok=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    with open(os.path.join(folder, f"{DATASET}.train.inter"), "w", encoding="utf-8") as f:
        f.write(header)
        for r in range(vocab):
            f.write(f"u{r}\ti{r + 1}\ti{(r + 1) % vocab + 1}\n")
    for part in ("valid", "test"):
        with open(os.path.join(folder, f"{DATASET}.{part}.inter"), "w",
                  encoding="utf-8") as f:
            f.write(header + f"u0\ti1\ti{min(2, vocab)}\n")


def make_batches(args, fields, torch, np):
    """``NUM_BATCHES`` RecBole ``Interaction`` batches of random histories (see the module
    docstring), from numpy's generator seeded with ``--seed``."""
    from recbole.data.interaction import Interaction

    rng = np.random.default_rng(args.seed)
    B, S = args.batch, args.seq
    batches = []
    for _ in range(NUM_BATCHES):
        lengths = rng.integers(1, S + 1, size=B)
        items = rng.integers(1, args.vocab + 1, size=(B, S))
        items[np.arange(S)[None, :] >= lengths[:, None]] = 0  # left-aligned, zero-padded
        targets = rng.integers(1, args.vocab + 1, size=B)
        batches.append(Interaction({
            fields["seq"]: torch.as_tensor(items, dtype=torch.long),
            fields["length"]: torch.as_tensor(lengths, dtype=torch.long),
            fields["item"]: torch.as_tensor(targets, dtype=torch.long)}))
    return batches


class _Peer:
    def __init__(self, args):
        # RecBole writes log_tensorboard/ (and its checkpoint dir) under the working
        # directory: a temporary one, removed at exit.
        self._tmp = tempfile.TemporaryDirectory(prefix="recbole_sasrec_peer_")
        os.chdir(self._tmp.name)
        sys.argv = sys.argv[:1]  # RecBole's Config parses "--key=value" from argv
        import numpy as np
        import recbole
        import torch
        from recbole.config import Config
        from recbole.data import create_dataset
        from recbole.model.sequential_recommender import SASRec
        from recbole.utils import get_trainer, init_seed

        self.args = args
        data_dir = os.path.join(self._tmp.name, "data")
        write_dataset(data_dir, args.vocab)
        config = Config(model="SASRec", dataset=DATASET, config_dict={
            "data_path": data_dir,
            "benchmark_filename": ["train", "valid", "test"],
            "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
            "alias_of_item_id": ["item_id_list"],
            "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
            "field_separator": "\t", "seq_separator": " ",
            "n_layers": args.num_layers, "n_heads": args.heads, "hidden_size": args.hidden,
            "inner_size": args.intermediate, "MAX_ITEM_LIST_LENGTH": args.seq,
            "loss_type": "CE", "train_neg_sample_args": None,
            "train_batch_size": args.batch, "seed": args.seed, "reproducibility": True,
            "use_gpu": False, "show_progress": False, "log_wandb": False,
            "checkpoint_dir": os.path.join(self._tmp.name, "checkpoints")})
        torch.set_num_threads(args.threads)
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        items = dataset.num(config["ITEM_ID_FIELD"])
        if items != args.vocab + 1:
            raise RuntimeError(f"RecBole's item field has {items} ids, expected "
                               f"{args.vocab} items + padding")
        self.model = SASRec(config, dataset).to(config["device"])
        self.trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, self.model)
        fields = {"seq": self.model.ITEM_SEQ, "length": self.model.ITEM_SEQ_LEN,
                  "item": self.model.POS_ITEM_ID}
        self.batches = make_batches(args, fields, torch, np)
        self.next_batch = 0
        self.epoch = 0
        warmup = self._steps(WARMUP_STEPS)
        self.info = {
            "ready": True, "recbole": recbole.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "threads": torch.get_num_threads(),
            "params": int(sum(p.numel() for p in self.model.parameters())),
            "trainable_params": int(sum(p.numel() for p in self.model.parameters()
                                        if p.requires_grad)),
            "n_items": int(items), "optimizer": type(self.trainer.optimizer).__name__,
            "device": str(config["device"]), "batch": args.batch, "seq": args.seq,
            "settings": {k: (config[k] if isinstance(config[k], (int, float, str, bool,
                                                                 type(None)))
                             else str(config[k])) for k in REPORTED_KEYS},
            "warmup_loss": warmup,
        }

    def _steps(self, steps):
        """``steps`` RecBole training steps (one ``_train_epoch``); their mean loss."""
        batches = []
        for _ in range(steps):
            batches.append(self.batches[self.next_batch])
            self.next_batch = (self.next_batch + 1) % len(self.batches)
        total = self.trainer._train_epoch(batches, self.epoch)
        self.epoch += 1
        return float(total) / steps

    def window(self, steps):
        start = time.perf_counter()
        loss = self._steps(steps)
        seconds = time.perf_counter() - start
        return {"steps": steps, "seconds": seconds,
                "examples_per_s": steps * self.args.batch / seconds, "loss": loss}

    def close(self):
        try:
            self.trainer.tensorboard.close()
        except Exception:  # noqa: BLE001 -- best effort at exit
            pass
        os.chdir(os.path.dirname(self._tmp.name))
        self._tmp.cleanup()


def main(argv=None):
    return peer_protocol.serve(lambda a: _Peer(parse_args(a)),
                               sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
