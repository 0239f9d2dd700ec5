"""LLM-as-a-judge: rubrics (prompt templates), verdict parsing, and the statistics built on
verdicts (pairwise win rates with position swap, agreement of two judges).

Library code: no Ray and no stage here. The judge stage (kdist.stages.judge) and evaluation
ask a judge endpoint through the batch-inference layer and use these to read the answers.
"""
