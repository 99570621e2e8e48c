"""The official wordings of the generation tasks (a text caption and the images or videos made from it), verbatim;
`prompts` says where each is used and builds the templates from them. Field: {caption}."""

IMAGE_PAIR = (
    "You are given a text caption and two generated images based on that caption. Your task is to evaluate and compare "
    "these images based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well each image aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of each image, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Compare both images using the above criteria and select the one that better aligns with the caption while "
    "exhibiting superior visual quality.\n"
    "Provide a clear conclusion such as \"Image 1 is better than Image 2.\", \"Image 2 is better than Image 1.\" and "
    "\"Both images are equally good.\"\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{caption}]"
)

IMAGE_POINT = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image "
    "based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Extract key elements from the provided text caption, evaluate their presence in the generated image using the "
    "format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and assign a "
    "score from 1 to 5 after 'Final Score:'.\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{caption}]"
)

# DiffusionDPO/sift_dpo_data.py asks the same question on a 1–10 scale.
IMAGE_POINT_SIFT = IMAGE_POINT.replace("score from 1 to 5 after", "score from 1 to 10 after")

VIDEO_PAIR = (
    "Suppose you are an expert in judging and evaluating the quality of AI-generated videos. You are given a text "
    "caption and the frames of two generated videos based on that caption. Your task is to evaluate and compare two "
    "videos based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well each video aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Video Quality: Examine the visual quality of each video, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Compare both videos using the above criteria and select the one that better aligns with the caption while "
    "exhibiting superior visual quality.\n"
    "Provide a clear conclusion such as \"Video 1 is better than Video 2.\", \"Video 2 is better than Video 1.\" and "
    "\"Both videos are equally good.\"\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{caption}]"
)

VIDEO_PAIR_GENAI_BENCH = (
    "Imagine you are an expert tasked with evaluating AI-generated videos. You are provided with a text caption and "
    "two videos generated based on that caption. Your job is to assess and compare these videos based on the following "
    "two main factors:\n"
    "\n"
    "1. Caption Alignment: Evaluate how closely each video matches the description provided in the caption. Pay "
    "attention to the accuracy of objects depicted, their relationships, and any attributes described in the caption.\n"
    "\n"
    "2. Overall Video Quality: Look at the overall visual appeal of each video, considering clarity, the level of "
    "detail, color accuracy, and how aesthetically pleasing the video is.\n"
    "\n"
    "Using these factors, compare the two videos and determine which one better reflects the caption and exhibits "
    "better visual quality.\n"
    "\n"
    "Give your final judgment, such as 'Video 1 is better,' 'Video 2 is better,' or 'Both videos are equally good.'\n"
    "\n"
    "Your task is as follows:\n"
    "Text Caption: [{caption}]\n"
)

# The overall 1–10 score is never trained: the VideoFeedback records have no overall label.
VIDEO_POINT = (
    "Suppose you are an expert in judging and evaluating the quality of AI-generated videos, please watch the frames "
    "of a given video and see the text prompt for generating the video.\n"
    "Then give scores from 5 different dimensions:\n"
    "(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color\n"
    "(2) temporal consistency, the consistency of objects or humans in video\n"
    "(3) dynamic degree, the degree of dynamic changes\n"
    "(4) text-to-video alignment, the alignment between the text prompt and the video content\n"
    "(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge\n"
    "\n"
    "For each dimension, output a number from [1,2,3,4], \n"
    "in which '1' means 'Bad', '2' means 'Average', '3' means 'Good', \n"
    "'4' means 'Real' or 'Perfect' (the video is like a real video)\n"
    "Finally, based on above 5 dimensions, assign a score from 1 to 10 after 'Final Score:'\n"
    "Here is an output example:\n"
    "visual quality: 4\n"
    "temporal consistency: 4\n"
    "dynamic degree: 3\n"
    "text-to-video alignment: 1\n"
    "factual consistency: 2\n"
    "Final Score: 6\n"
    "\n"
    "**Note: In the example above, scores are placeholders meant only to demonstrate the format. Your actual "
    "evaluation should be based on the quality of the given video.**\n"
    "Your task is provided as follows: Text Prompt: [{caption}]"
)

VIDEO_POINT_SIFT = (
    "Suppose you are an expert in judging and evaluating the quality of AI-generated videos. You are given a text "
    "caption and the frames of a generated video based on that caption. Your task is to evaluate this videos based on "
    "two key criteria:\n"
    "1. Alignment with the Caption: Assess how well each video aligns with the provided caption. Consider the accuracy "
    "of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Video Quality: Examine the visual quality of each video, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\n"
    "Evaluate this video using the above criteria and assign a score from 1 to 10 after 'Final Score:'\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{caption}]"
)
