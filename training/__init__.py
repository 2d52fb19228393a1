"""DiSRouter self-awareness training: tasks and graders (``tasks``, ``graders``), synthetic tasks
(``synthetic``) and Stage 0 competence probing (``probe``)."""
