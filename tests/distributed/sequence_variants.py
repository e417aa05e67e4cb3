"""The GEM variants the sequence-mode exactness job and its test go through (model overrides)."""

VARIANTS = {
    "comirec_sa_input": ["model.gem=comirec_sa", "model.attention_positions=input"],
    "comirec_sa_bias": ["model.gem=comirec_sa", "model.attention_positions=bias"],
    "comirec_dr": ["model.gem=comirec_dr"],
    "sasrec": ["model.gem=sasrec"],
    "mean": ["model.gem=mean"],
    "last_k": ["model.gem=last_k"],
}
