# Everyday recipes. The README's commands work without `just`; these are shortcuts.

# The whole test suite (what CI runs first).
test:
    cargo test --release --workspace

# Everything CI runs, including the Python interoperability checks.
ci:
    bash .ci/run

# Data pipeline benchmark: Multi30k train from text to batches, 1 and 2 threads.
bench-data:
    cargo run --release --bin gnmt -- --threads 1 bench data
    cargo run --release --bin gnmt -- --threads 2 bench data

# Shared 8k vocabulary on Multi30k En+De, into runs/vocab-multi30k/.
vocab-multi30k data="../shared/data/multi30k":
    cargo run --release --bin gnmt -- vocab --train {{data}}/train.en {{data}}/train.de --size 8000 -o runs/vocab-multi30k

fmt:
    cargo fmt --all

# Training-step benchmark (forward, backward, Adam), 1 and 2 threads, against PyTorch.
bench-train preset="small":
    cargo run --release --bin gnmt -- bench train --preset {{preset}} --torch

# Decoding benchmark: greedy and beam 5 on test_2016_flickr, 1 and 2 threads, peak memory.
bench-translate model="models/multi30k-en-de":
    cargo run --release --bin gnmt -- bench translate -m {{model}}

# Train the shipped model models/multi30k-en-de from scratch (60 minutes on 2 cores), then
# export it: the final (averaged) weights, f16 storage, the decoding settings chosen on val
# (see models/multi30k-en-de/MODEL.md).
train-multi30k data="../shared/data/multi30k":
    cargo run --release --bin gnmt -- --threads 2 train --config models/recipes/multi30k-en-de.toml --train {{data}}/train.en {{data}}/train.de --valid {{data}}/val.en {{data}}/val.de -o runs/multi30k-en-de
    cargo run --release --bin gnmt -- export runs/multi30k-en-de -o models/multi30k-en-de --storage f16 --beam-size 5 --alpha 1.4 --beta 0.0

# The shipped multilingual model models/multi30k-multilingual, English to German and to
# French (one hour on 2 cores), then exported as the shipped one was (see its MODEL.md);
# sources are tagged with the target language, `translate --target-lang fr` chooses it.
train-multi30k-multilingual data="../shared/data/multi30k":
    cargo run --release --bin gnmt -- --threads 2 train --config models/recipes/multi30k-multilingual.toml --preset small --pair en-de {{data}}/train.en {{data}}/train.de --pair en-fr {{data}}/train.en {{data}}/train.fr --valid-pair en-de {{data}}/val.en {{data}}/val.de --valid-pair en-fr {{data}}/val.en {{data}}/val.fr -o runs/multi30k-multilingual
    cargo run --release --bin gnmt -- export runs/multi30k-multilingual/best -o models/multi30k-multilingual --storage f16 --beam-size 5 --alpha 1.4 --beta 0.0

# The bilingual baseline of the multilingual model: the same recipe and number of updates
# (4,555, what the multilingual run made in its hour) on English to `tgt` (de or fr).
train-multi30k-bilingual tgt="de" data="../shared/data/multi30k":
    cargo run --release --bin gnmt -- --threads 2 train --config models/recipes/multi30k-multilingual.toml --preset small --train {{data}}/train.en {{data}}/train.{{tgt}} --valid {{data}}/val.en {{data}}/val.{{tgt}} --max-steps 4555 --max-time 3h -o runs/bilingual-en-{{tgt}}

# BLEU on val for a grid of beam settings (how the shipped generation.json was chosen).
tune-generation model="runs/multi30k-en-de" data="../shared/data/multi30k":
    for k in 1 5 10; do for a in 0.6 1.0 1.4 1.8; do for b in 0.0 0.1 0.2; do echo "beam $k alpha $a beta $b"; cargo run -q --release --bin gnmt -- eval -m {{model}} --src {{data}}/val.en --ref {{data}}/val.de --beam-size $k --alpha $a --beta $b | grep BLEU; done; done; done

# The residual-connection study (about 20 minutes on 2 cores), into runs/study-residuals.
study-residuals data="../shared/data/multi30k":
    cargo run --release --bin gnmt -- study residuals --train {{data}}/train.en {{data}}/train.de --valid {{data}}/val.en {{data}}/val.de -o runs/study-residuals
