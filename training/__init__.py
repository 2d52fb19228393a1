"""DiSRouter self-awareness training (competence probing, SFT, RL, evaluation): not built yet."""
