"""Graph passes run before rules are assigned: canonizers (batch-norm folding, ...), the transformer
passes (attention decomposition, gates and products) and the norms' one form."""
