"""The plain Transformers Trainer (+ PEFT) recipe on a whole data set: the reference beside an emotune run.

Trains MiniLM on Emotion's training split with the Trainer, picks the best epoch on validation accuracy,
and reads the test split once for it; prints the wall time and both accuracies as one JSON line. Use it
with the same model, batch size, epochs and precision as the emotune run it stands beside:

    python benchmarks/trainer_recipe.py --data-dir ../shared/data --epochs 3 --precision bf16
    emotune train emotion --data-dir ../shared/data --method full --epochs 3 --precision bf16 --test --out RUN
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py
from machine import machine_line  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--model", default="minilm", help="Encoder alias or folder.")
    p.add_argument("--method", default="full", choices=["full", "lora"])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = p.parse_args()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer
    from transformers import TrainingArguments

    from emotune.config import DataConfig
    from emotune.data import load_data
    from emotune.models import resolve_model_path

    print(machine_line(), flush=True)
    data = load_data(DataConfig(name="emotion", data_dir=args.data_dir))
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data.label_names))
    if args.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["query", "key", "value"]))

    def rows(split):
        enc = tok(list(split.texts), truncation=True, max_length=128)
        return [{"input_ids": i, "attention_mask": a, "label": y}
                for i, a, y in zip(enc["input_ids"], enc["attention_mask"], split.labels)]

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
            num_train_epochs=args.epochs, learning_rate=5e-5 if args.method == "full" else 3e-4,
            weight_decay=0.01, adam_beta2=0.99, eval_strategy="epoch", save_strategy="epoch",
            save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="accuracy",
            report_to=[], logging_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
            bf16=args.precision == "bf16", fp16=args.precision == "fp16", seed=42)
        trainer = Trainer(model=model, args=targs, train_dataset=rows(data["train"]),
                          eval_dataset=rows(data["validation"]), data_collator=DataCollatorWithPadding(tok),
                          compute_metrics=accuracy)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        validation = trainer.evaluate()["eval_accuracy"]
        test = trainer.evaluate(rows(data["test"]), metric_key_prefix="test")["test_accuracy"]
    print(json.dumps({"recipe": "Trainer+PEFT" if args.method == "lora" else "Trainer", "method": args.method,
                      "precision": args.precision, "epochs": args.epochs, "train_s": round(seconds, 1),
                      "validation_accuracy": validation, "test_accuracy": test}))


if __name__ == "__main__":
    main()
