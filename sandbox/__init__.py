"""Local simulators of the SaaS APIs, OpenAI embeddings and Pinecone's data plane."""
