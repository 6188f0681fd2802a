# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Find the mirror-descent circuit in a zoo model
#
# D'Angelo & Flammarion argue that a 3-layer disentangled transformer trained on MTD sequences runs
# one step of mirror descent on the lag weights: layer 1 reads the m lagged tokens, layer 2 gathers
# the evidence for each lag, layer 3 mixes the lagged tokens' transition rows with the weights that
# evidence gives.  This tutorial checks that story on a shipped zoo model with the tools of
# `icmix.interp`:
#
# 1. load a zoo run and cache its activations;
# 2. compare each layer's attention with the hand-built construction's;
# 3. ablate layer 1's attention to the lags, then everything else, and measure the KL to Bayes;
# 4. patch layer 2's output from one sequence into another with different lag weights, and watch
#    the prediction follow.
#
# It runs in about half a minute on one core; every cell is executed when the site is built.

# %% [markdown]
# ## 1. Load and cache
#
# `icmix.zoo.load` checks the entry (every file against its SHA-256, the package's manifest) and
# returns the model, its training config and its task.  `long/` picks the long tier (20,000 steps).

# %%
import torch

from icmix import interp, zoo
from icmix.estimators import mtd as est
from icmix.metrics import kl_divergence
from icmix.objectives import to_distribution

model, cfg, task = zoo.load("long/disentangled3-m3-T32-mse-seed0")
T, m = cfg.task.length, task.order
print(type(model).__name__, "trained on", task, f"T = {T}, loss {cfg.loss}")

tokens, lam = task.sample(512, T + 1, generator=torch.Generator().manual_seed(0))
tokens = tokens[:, :T]
with torch.no_grad():
    out, cache = interp.run_with_cache(model, tokens)
print(cache)
print(interp.hook_names(model)[:8], "...")

# %% [markdown]
# Every activation has a name, the same as TransformerLens's where the concept exists, and each
# name is its module path: `model.get_submodule("blocks.0.attn.hook_pattern")` is the hook point.
# The disentangled model has no separate queries, keys or values (its query-key product is one
# matrix and its value is the stream itself), so it has no `hook_q`.
#
# The model's prediction is the last position's output, read as a distribution; the Bayes-optimal
# prediction (the exact posterior mean of the lag weights) is the reference.

# %%
bayes = cfg.family.bayes_predictor(task).predict(tokens, task, [T])[:, 0]


def predicted(output):
    return to_distribution(output[:, -1], cfg.loss)


def kl_to_bayes(output):
    return kl_divergence(bayes, predicted(output)).mean().item()


print(f"KL(Bayes || model) at position {T}: {kl_to_bayes(out):.5f}")

# %% [markdown]
# ## 2. Attention, layer by layer, against the construction
#
# The construction (`icmix.construct.md_transformer`) is the paper's exact 3-layer model for this
# transition matrix; its step size β is tuned on the same sequences.  `construction_agreement`
# picks each trained layer's best head and reports the mean cosine of its attention rows with the
# construction's, and the mass it puts where the construction puts any.

# %%
from icmix.construct import md_transformer
from icmix.predictors import ConstructedMirrorDescent

tuner = ConstructedMirrorDescent()
tuner.tune(tokens[:128], lam[:128], task, [T])
beta = tuner.chosen_beta[T]
construction = md_transformer(task.transition, m, beta, max_length=T)
with torch.no_grad():
    reference = interp.attention_patterns(construction, tokens[:128])
trained = [cache[name][:128] for name in cache.layers("attn.hook_pattern")]
agreement = interp.construction_agreement(trained, reference, start=m)
print(f"construction's beta = {beta:.3g}")
agreement.round(3)

# %% [markdown]
# Layer 1 puts its mass on offsets 1..m, as the construction does (`offset_profile` shows the mass
# on each offset):

# %%
profile = interp.offset_profile(cache["blocks.0.attn.hook_pattern"], max_offset=6)
print("layer 1, mass on offsets 0..6:", profile[0].numpy().round(3))
print("the lags 1..m hold", round(profile[0, 1:m + 1].sum().item(), 3))

# %% [markdown]
# ## 3. Ablate layer 1's attention
#
# A hook on `blocks.0.attn.hook_pattern` may return a replacement pattern; the model then runs on
# it.  Keep only the lag offsets (1..m) and renormalise, then the opposite: everything but the lags.
# Rows before position m have no full set of lags and are left as they are.

# %%
i = torch.arange(T)
lags = torch.zeros(T, T, dtype=torch.bool)
for o in range(1, m + 1):
    lags[i[o:], i[o:] - o] = True
early = torch.ones(T, T, dtype=torch.bool).tril()
early[m:] = False


def keep_only(mask):
    def hook(pattern, name):
        kept = pattern * (mask | early)
        return kept / kept.sum(-1, keepdim=True).clamp_min(1e-30)
    return hook


with torch.no_grad():
    lags_only = interp.run_with_hooks(model, tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", keep_only(lags))])
    no_lags = interp.run_with_hooks(model, tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", keep_only(~lags))])
ablation = {"as trained": kl_to_bayes(out), "layer 1 on the lags only": kl_to_bayes(lags_only),
            "layer 1 off the lags only": kl_to_bayes(no_lags)}
for what, kl in ablation.items():
    print(f"{what:<28} KL to Bayes {kl:.5f}")

# %% [markdown]
# Taking the lags away costs far more than taking everything else away: layer 1's lag attention
# carries the model's prediction, though the off-lag remainder is not idle.
#
# ## 4. Patch layer 2 between sequences with different lag weights
#
# Split the batch in two: sequences A and B, each drawn with its own lag weights.  Run B, but at
# the last position replace layer 2's output (`blocks.1.hook_attn_out`, the lag evidence) with
# A's.  If layer 2 carries the lag weights, B's prediction should now mix *B's* lagged tokens with
# *A's* weights: `predictive(B, π, λ̂_A)`, with λ̂ the exact posterior mean.

# %%
a, b = tokens[:256], tokens[256:]
with torch.no_grad():
    _, cache_a = interp.run_with_cache(model, a, names="blocks.1.hook_attn_out")
    unpatched = model(b)


def from_a(name):
    def hook(activation, hook_name):
        patched = activation.clone()
        patched[:, -1] = cache_a[name][:, -1]
        return patched
    return hook


with torch.no_grad():
    patched = interp.run_with_hooks(model, b, fwd_hooks=[("blocks.1.hook_attn_out", from_a("blocks.1.hook_attn_out"))])

follows_a = est.predictive(b, task.transition, est.bayes_exact(a, task.transition, m, task.alpha))
own = est.predictive(b, task.transition, est.bayes_exact(b, task.transition, m, task.alpha))
for what, output in (("B as it is", unpatched), ("B with A's layer 2", patched)):
    q = predicted(output)
    print(f"{what:<20} KL to B-with-A's-weights {kl_divergence(follows_a, q).mean():.4f}   "
          f"KL to B's own Bayes {kl_divergence(own, q).mean():.4f}")

# %% [markdown]
# The patched prediction moves from B's own weights to A's: layer 2's output at the query is where
# the lag weights live, and layer 3 applies whatever weights it is handed to the lagged tokens.
#
# `activation_patching` does the same for every hook point at once: each row patches one hook
# point's activation at the last position from A into B and reports the metric, here the KL from
# "B's lagged tokens with A's weights" (lower: the prediction follows A more).

# %%
table = interp.activation_patching(model, (a,), (b,), lambda o: kl_divergence(follows_a, predicted(o)).mean(),
                                   names=lambda n: n.endswith(("hook_attn_out", "hook_resid_post")), position=-1)
table[["hook", "metric", "effect"]].round(4)

# %% [markdown]
# Only layer 2's output moves B's prediction onto A's weights.  Layer 1's output at the query barely
# matters (the weights are not there yet).  The stream after layer 1 or 2 at the query also holds
# the query's own token and layer 1's copy of its lagged tokens, so patching it brings A's lagged
# tokens along and the prediction follows neither sequence; layer 3's output is A's prediction
# itself.  `icmix inspect long/disentangled3-m3-T32-mse-seed0` writes each layer's maps, the
# per-head scores and the comparison with the construction in one command.
