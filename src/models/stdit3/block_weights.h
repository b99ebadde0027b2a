// The tensors of one STDiT3 block (spatial and temporal alike), declared once: checkpoint name,
// shape, tensor-parallel split, how the backend keeps it, and where the model holds it. The
// checkpoint specs (config.cpp), the tensor-parallel split (stdit3_tp_split, shard_stdit3_weights,
// `convert --tp`) and loading (stdit3.cpp) are all derived from stdit3_block_params().
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

}  // namespace stdit
