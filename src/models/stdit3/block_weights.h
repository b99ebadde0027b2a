// STDiT3's tensors, declared once: the ~20 outside the blocks (stdit3_global_params()) and those
// of one block, spatial and temporal alike (stdit3_block_params()): checkpoint name, shape,
// tensor-parallel split, how the backend keeps it, and where the model holds it. The checkpoint
// specs (config.cpp), the tensor-parallel split (stdit3_tp_split, shard_stdit3_weights,
// `convert --tp`) and loading (stdit3.cpp) are all derived from these two lists.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "models/stdit3/config.h"

namespace stdit {

struct BlockWeights {
  Tensor table;  // [6C]
  Tensor qkv_w, qkv_b, q_norm, k_norm, proj_w, proj_b;
  Tensor q_w, q_b, kv_w, kv_b, cproj_w, cproj_b;
  Tensor fc1_w, fc1_b, fc2_w, fc2_b;
};

struct BlockParam {
  enum class Keep {
    Plain,    // uploaded as is (norms, biases, tables)
    Matrix,   // only ever a linear() weight: the backend may keep it in bf16 (upload_weight)
    RowBias,  // the bias of a row-parallel linear: added once, so only tensor-parallel rank 0 holds it
  };
  const char* suffix;                            // after "spatial_blocks.N." / "temporal_blocks.N."
  const char* fp8_name;                          // Matrix: its name for --fp8-keep (fp8_layer_names())
  Shape (*shape)(const STDiT3Config& c);         // in the checkpoint (unsharded)
  TpSplit split;                                 // Rows: column-parallel output rows; Cols: input columns
  Keep keep;
  Tensor BlockWeights::*field;
  bool flatten = false;                          // held as a 1-D view (the [6, C] table)
};

const std::vector<BlockParam>& stdit3_block_params();

// The embedders, the caption MLP, the final layer, RoPE's frequencies (replicated on every
// tensor-parallel rank).
struct GlobalWeights {
  Tensor x_emb_w, x_emb_b;  // the patch embedder (held as [C, in * patch volume])
  Tensor t_w0, t_b0, t_w2, t_b2, fps_w0, fps_b0, fps_w2, fps_b2;
  Tensor t_block_w, t_block_b;
  Tensor y_embedding;  // kept on the host: the null caption, used by the pipeline
  Tensor y_fc1_w, y_fc1_b, y_fc2_w, y_fc2_b;
  Tensor final_table, final_w, final_b;
  Tensor rope_freqs;  // absent from most checkpoints: then computed (1 / 10000^(2i/d))
};

struct GlobalParam {
  enum class Where {
    Device,    // uploaded
    Host,      // kept on the host (the caption table)
    Optional,  // uploaded when the checkpoint has it
  };
  const char* name;
  Shape (*shape)(const STDiT3Config& c);
  Tensor GlobalWeights::*field;
  Where where = Where::Device;
  bool after_blocks = false;  // listed after the blocks in the specs (the final layer)
};

const std::vector<GlobalParam>& stdit3_global_params();

}  // namespace stdit
