"""The ⟨δ_k⟩ engine: logit distributions (:mod:`.logits`), exact Laplace-transform averages
(:mod:`.laplace`, :mod:`.average`) and Monte Carlo ones (:mod:`.mc_device`), root finding
(:mod:`.roots`, :mod:`.window`), the solvers of ε and of transferred parameters (:mod:`.solve`)
and their cost model (:mod:`.cost`). Pure computation: no torch, no files."""
